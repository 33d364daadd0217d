"""A/B single-stream figures: Model.generate greedy on one prompt, three times; the median
prefill and decode tokens/s from GenerationStats. The tree on PYTHONPATH decides which build
is measured, so alternate two trees in one session:

    PYTHONPATH=<tree> python benchmarks/ab_stream.py MODEL.gguf N_PROMPT N_GEN THREADS
"""
import json
import sys

from gemma4stack import Model


def main() -> None:
    path, n_prompt, n_gen, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    m = Model(path, threads=threads, context=2048)
    prompt = m.detokenize(m.tokenize(" ".join(["word"] * 4000))[1:n_prompt])
    m.generate("warm up", max_tokens=4, temperature=0)
    out = []
    for r in range(3):
        m.generate(prompt + f" {r}", max_tokens=n_gen, temperature=0)
        s = m.last_stats
        out.append((s.prefill_tokens_per_s, s.decode_tokens_per_s))
    print(json.dumps({"prefill_tps": round(sorted(o[0] for o in out)[1], 2),
                      "decode_tps": round(sorted(o[1] for o in out)[1], 2)}))


if __name__ == "__main__":
    main()
