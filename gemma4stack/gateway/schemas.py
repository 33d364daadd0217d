"""Request bodies of the OpenAI API subset the gateway serves, validated with pydantic.

Strict types (a string "0.5" is not a temperature), ranges as the OpenAI API documents
them. Unknown fields are accepted and ignored (clients send many optional ones).
Messages are forwarded to openai tiers as the client sent them; only their shape is
checked here.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .backends import GenRequest
from .config import ServerConfig
from .errors import APIError

_CFG = ConfigDict(strict=True, extra="ignore")


class StreamOptions(BaseModel):
    model_config = _CFG
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = _CFG
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None


class _Sampling(BaseModel):
    model_config = _CFG
    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    n: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None
    keep_alive: Union[str, int, float, None] = None    # Ollama's; see lifecycle.parse_keep_alive


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    echo: bool = False


def _param(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[ContentPart]", "list[str]", "none") or "[" in str(part):
            continue                  # pydantic's union-branch labels
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_error(e: ValidationError) -> APIError:
    err = e.errors()[0]
    param = _param(err["loc"])
    return APIError(400, f"Invalid value for '{param}': {err['msg']}", param=param,
                    code="invalid_value" if err["type"] != "missing" else "missing_required_parameter")


def parse(body: dict, kind: str, server: ServerConfig) -> tuple[str, GenRequest, bool, bool]:
    """(model, GenRequest, stream, include_usage) from a request body; APIError 400 if bad."""
    cls = ChatRequest if kind == "chat" else CompletionRequest
    try:
        r = cls.model_validate(body)
    except ValidationError as e:
        raise validation_error(e) from None
    if r.n not in (None, 1):
        raise APIError(400, "Only n=1 is supported by the gateway.", param="n", code="invalid_value")
    max_tokens = r.max_tokens
    if kind == "chat" and r.max_completion_tokens is not None:
        max_tokens = r.max_completion_tokens
    if max_tokens is not None and max_tokens > server.max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}; this gateway allows at most "
                       f"{server.max_tokens}.", param="max_tokens", code="invalid_value")
    stop = [r.stop] if isinstance(r.stop, str) else r.stop
    if stop is not None and len(stop) > 16:
        raise APIError(400, "At most 16 stop sequences.", param="stop", code="invalid_value")
    extra = {k: v for k, v in (("presence_penalty", r.presence_penalty),
                               ("frequency_penalty", r.frequency_penalty)) if v is not None}
    keep_alive = None
    if r.keep_alive is not None:
        from .lifecycle import parse_keep_alive
        try:
            keep_alive = parse_keep_alive(r.keep_alive)
        except ValueError as e:
            raise APIError(400, str(e), param="keep_alive", code="invalid_value") from None
    req = GenRequest(kind=kind, max_tokens=max_tokens, temperature=r.temperature, top_p=r.top_p,
                     top_k=r.top_k, seed=r.seed, stop=stop or None, extra=extra,
                     keep_alive=keep_alive)
    if kind == "chat":
        if len(r.messages) > server.max_messages:
            raise APIError(400, f"{len(r.messages)} messages; this gateway allows at most "
                           f"{server.max_messages}.", param="messages", code="invalid_value")
        req.messages = body["messages"]      # as sent: forwarded unchanged to openai tiers
    else:
        prompt = r.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "Only a single prompt per request is supported.",
                               param="prompt", code="invalid_value")
            prompt = prompt[0]
        if r.echo:
            raise APIError(400, "echo is not supported.", param="echo", code="invalid_value")
        req.prompt = prompt
    include_usage = bool(r.stream_options and r.stream_options.include_usage)
    return r.model, req, r.stream, include_usage
