#!/usr/bin/env python3
# fp8-golden-sim.py: what `test_model_golden cpu float32 fp8|kvfp8` should measure, computed independently.
#   python scripts/fp8-golden-sim.py ROOT [weights|kv]      (tests/golden/requirements.txt's venv; default weights)
# Independent estimate: transformers' Qwen2 decoder in fp32 on the golden audio embeddings, with
#   weights: per-channel fp8 e4m3 decoder linears (torch float8 round trip);
#   kv:      every key (after RoPE) and value rounded as the fp8 KV cache stores them (kernels/fp8_math.h,
#            es_fp8_quantize_row: a scale amax/448 per token and head, e4m3 codes), through the eager attention;
# top-1 agreement with the golden fp32 over the teacher-forced steps and the cosine of the last-position logits.
import json, sys, numpy as np, torch
import transformers.models.qwen2.modeling_qwen2 as qwen2
from transformers import Qwen2AudioForConditionalGeneration
root = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else "weights"
assert mode in ("weights", "kv"), mode
m = json.load(open(f"{root}/tests/golden/fixtures/manifest.json"))
models = {}

def fp8_rows(x):  # x [..., D]: one scale per row, as es_fp8_quantize_row
    amax = x.abs().amax(dim=-1, keepdim=True)
    s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    return (x / s).to(torch.float8_e4m3fn).to(torch.float32) * s

eager = qwen2.eager_attention_forward
def eager_kv_fp8(module, query, key, value, *args, **kwargs):
    if getattr(module, "kv_fp8", False):
        key, value = fp8_rows(key), fp8_rows(value)
    return eager(module, query, key, value, *args, **kwargs)
qwen2.eager_attention_forward = eager_kv_fp8  # looked up at call time by Qwen2Attention.forward

def load(ck, fp8):
    key = (ck, fp8)
    if key in models: return models[key]
    d = f"{root}/" + m["checkpoints"][ck]["dir"]
    model = Qwen2AudioForConditionalGeneration.from_pretrained(d, torch_dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    if fp8 and mode == "kv":
        for mod in model.modules():
            if isinstance(mod, qwen2.Qwen2Attention): mod.kv_fp8 = True
    elif fp8:
        for name, p in model.named_parameters():
            if ".layers." in name and "language_model" in name and name.endswith("proj.weight"):
                w = p.data
                s = w.abs().amax(dim=1, keepdim=True) / 448.0
                s[s == 0] = 1.0
                p.data = (w / s).to(torch.float8_e4m3fn).to(torch.float32) * s
    models[key] = model
    return model
tot = agree = 0; worst = 1.0
for c in m["cases"]:
    ck = c["checkpoint"]; audio_id = m["checkpoints"][ck]["audio_token_id"]
    ids = np.load(f"{root}/" + c["prompt_ids"]); g = np.load(f"{root}/" + c["greedy_ids"])
    emb = torch.tensor(np.load(f"{root}/" + c["audio_embeds"]))
    t8 = np.load(f"{root}/" + c["top8_ids"]); last = torch.tensor(np.load(f"{root}/" + c["last_logits"])).flatten()
    seq = torch.tensor(np.concatenate([ids, g[:-1]])).long()[None]
    res = []
    for fp8 in (0, 1):
        model = load(ck, fp8)
        with torch.no_grad():
            x = model.get_input_embeddings()(seq)
            x[0, seq[0] == audio_id] = emb
            logits = model(inputs_embeds=x).logits[0]
        res.append(logits)
    T = len(ids); S = len(g)
    tf = res[1][T - 1:T - 1 + S]
    a = int((tf.argmax(-1).numpy() == t8[:, 0]).sum())
    cos = torch.nn.functional.cosine_similarity(res[1][T - 1], last, dim=0).item()
    cos32 = torch.nn.functional.cosine_similarity(res[0][T - 1], last, dim=0).item()
    worst = min(worst, cos); tot += S; agree += a
    print(f"{c['name']:18s} fp8 top1 {a}/{S} cos {cos:.6f} (fp32 sim cos {cos32:.6f})")
print(f"torch fp8 ({mode}) simulation: worst cos {worst:.6f} top1 {agree}/{tot} = {agree/tot:.4f}")
