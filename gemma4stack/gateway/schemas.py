"""Request bodies of the OpenAI API subset the gateway serves, validated with pydantic.

Strict types (a string "0.5" is not a temperature), ranges as the OpenAI API documents
them (https://platform.openai.com/docs/api-reference/chat/create): tools, tool_choice,
parallel_tool_calls, response_format, assistant tool_calls and tool messages, content parts,
logprobs/top_logprobs, logit_bias, n, seed, stop, max_completion_tokens, reasoning_effort,
user, metadata. Unknown fields are accepted: the body's fields other than the ones the
gateway itself uses (model, stream, sampling, messages/prompt) go into GenRequest.extra and
reach openai tiers exactly as the client sent them. Messages are forwarded as sent too;
only their shape is checked here.
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


class FunctionCall(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    id: str
    type: str = "function"
    function: FunctionCall | None = None


class Message(BaseModel):
    model_config = _CFG
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None       # assistant
    tool_call_id: str | None = None                # tool


class FunctionDef(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict | None = None                 # a JSON schema
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str = "function"
    function: FunctionDef | None = None


class NamedFunction(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str = "function"
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str          # text | json_object | json_schema (others: the upstream's business)
    json_schema: JSONSchemaFormat | None = None


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
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    keep_alive: Union[str, int, float, None] = None    # Ollama's; see lifecycle.parse_keep_alive
    metadata: dict[str, str] | None = None
    # llama.cpp server extensions, used by local tiers and forwarded
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    repeat_last_n: int | None = Field(default=None, ge=-1)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning_effort: str | None = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)


# the body fields the gateway itself reads into GenRequest; everything else is `extra`
_OWN = frozenset(("model", "stream", "stream_options", "messages", "prompt", "max_tokens",
                  "temperature", "top_p", "top_k", "seed", "stop", "echo", "keep_alive"))


def _param(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[ContentPart]", "list[str]", "none", "NamedToolChoice") \
                or "[" in str(part) or str(part).startswith("literal"):
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
    if r.n is not None and r.n > 16:
        raise APIError(400, "At most n=16 choices per request.", param="n", code="invalid_value")
    if kind == "chat" and r.top_logprobs and not r.logprobs:
        raise APIError(400, "top_logprobs requires logprobs=true.", param="top_logprobs",
                       code="invalid_value")
    for k, v in (r.logit_bias or {}).items():
        if not k.isdigit() or not -100 <= v <= 100:
            raise APIError(400, f"logit_bias: keys are token ids and values in [-100, 100] "
                           f"(got {k!r}: {v!r}).", param="logit_bias", code="invalid_value")
    max_tokens = r.max_tokens
    if kind == "chat" and r.max_completion_tokens is not None:
        max_tokens = r.max_completion_tokens
    if max_tokens is not None and max_tokens > server.max_tokens:
        raise APIError(400, f"max_tokens is {max_tokens}; this gateway allows at most "
                       f"{server.max_tokens}.", param="max_tokens", code="invalid_value")
    stop = [r.stop] if isinstance(r.stop, str) else r.stop
    if stop is not None and len(stop) > 16:
        raise APIError(400, "At most 16 stop sequences.", param="stop", code="invalid_value")
    extra = {k: v for k, v in body.items() if k not in _OWN}
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
