#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) as the reference for llmd's engine.

  bench/llamacpp_ref.py speed  MODEL.gguf [--threads 2] [--prompt-ids FILE] [--runs 5]
      prefill tok/s of a 512-token prompt and decode tok/s of 128 tokens, batch 1,
      min/median/max over runs; one JSON line.
  bench/llamacpp_ref.py logits MODEL.gguf PROMPTS.json OUT.json [--top 64]
      for each prompt (a list of token ids), llama.cpp's logits at the last position:
      the top-N (id, logit) pairs and the full-vector statistics, for the engine's tests.

Install first: python3 -m pip install llama-cpp-python  (builds llama.cpp, ~16 min on 2 cores).
"""
import argparse
import json
import statistics
import sys
import time


def load(model, threads, n_ctx=2048, logits_all=False):
    from llama_cpp import Llama

    return Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                 n_batch=512, logits_all=logits_all, verbose=False)


def last_logits(llm):
    import numpy as np
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def speed(args):
    llm = load(args.model, args.threads)
    if args.prompt_ids:
        prompt = json.load(open(args.prompt_ids))
    else:
        text = open(__file__).read()
        prompt = llm.tokenize(text.encode(), add_bos=False)
    prompt = (prompt * (args.prompt_tokens // max(len(prompt), 1) + 1))[: args.prompt_tokens]
    pre, dec = [], []
    for run in range(args.runs + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        tok = int(last_logits(llm).argmax())
        for _ in range(args.decode_tokens - 1):
            llm.eval([tok])
            tok = int(last_logits(llm).argmax())
        t2 = time.perf_counter()
        if run > 0:
            pre.append(len(prompt) / (t1 - t0))
            dec.append((args.decode_tokens - 1) / (t2 - t1))
    print(json.dumps({
        "engine": "llama.cpp", "threads": args.threads, "runs": args.runs,
        "prompt_tokens": len(prompt), "decode_tokens": args.decode_tokens,
        "prefill_tok_s": statistics.median(pre), "prefill_tok_s_min": min(pre), "prefill_tok_s_max": max(pre),
        "decode_tok_s": statistics.median(dec), "decode_tok_s_min": min(dec), "decode_tok_s_max": max(dec),
    }))


def logits(args):
    llm = load(args.model, args.threads, logits_all=False)
    prompts = json.load(open(args.prompts))
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        row = last_logits(llm)
        order = row.argsort()[::-1][: args.top]
        out.append({
            "prompt_ids": ids,
            "top": [[int(i), float(row[i])] for i in order],
            "mean": float(row.mean()),
            "std": float(row.std()),
        })
    json.dump({"reference": "llama.cpp via llama-cpp-python", "threads": args.threads, "results": out},
              open(args.out, "w"), indent=None)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("model")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--prompt-tokens", type=int, default=512)
    s.add_argument("--decode-tokens", type=int, default=128)
    s.add_argument("--prompt-ids")
    s.add_argument("--runs", type=int, default=5)
    l = sub.add_parser("logits")
    l.add_argument("model")
    l.add_argument("prompts")
    l.add_argument("out")
    l.add_argument("--threads", type=int, default=2)
    l.add_argument("--top", type=int, default=64)
    args = p.parse_args()
    {"speed": speed, "logits": logits}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
