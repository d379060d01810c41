"""The official `openai` Python client against `earshot serve` (run by test_server with build/test-venv's Python).

usage: openai_client.py BASE_URL API_KEY MODEL DATA_DIR
Prints one JSON object (the texts it got, for test_server to compare with `earshot run --json`) and exits 0,
or prints what went wrong and exits 1.
"""
import base64
import json
import sys

import openai
from openai import OpenAI

base_url, api_key, model, data = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def b64(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


GREEDY = dict(temperature=0, max_tokens=20, extra_body={"repetition_penalty": 1, "ignore_eos": True})
out = {}

models = client.models.list()
check([m.id for m in models.data] == [model], f"models.list: {[m.id for m in models.data]}")

# chat, non-streamed, input_audio
alarm = b64(f"{data}/alarm-clock-48k-stereo.oga")
msgs = [{"role": "user", "content": [
    {"type": "input_audio", "input_audio": {"data": alarm, "format": "ogg"}},
    {"type": "text", "text": "What's that sound?"}]}]
r = client.chat.completions.create(model=model, messages=msgs, **GREEDY)
out["chat"] = r.choices[0].message.content
check(r.choices[0].finish_reason == "length", f"chat finish_reason {r.choices[0].finish_reason}")
check(r.usage.completion_tokens == 20, f"chat usage {r.usage}")
check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"), f"chat object/id {r.object} {r.id}")

# chat, streamed, audio_url data: URL, with usage
msgs_url = [{"role": "user", "content": [
    {"type": "audio_url", "audio_url": {"url": "data:audio/ogg;base64," + alarm}},
    {"type": "text", "text": "What's that sound?"}]}]
chunks = list(client.chat.completions.create(model=model, messages=msgs_url, stream=True,
                                             stream_options={"include_usage": True}, **GREEDY))
check(len(chunks) >= 3, f"stream: {len(chunks)} chunks")
check(chunks[0].choices[0].delta.role == "assistant", "stream: the first chunk carries the role")
check(len(set(c.id for c in chunks)) == 1, "stream: one id across chunks")
finish = [c.choices[0].finish_reason for c in chunks if c.choices]
check(finish[-1] == "length" and all(f is None for f in finish[:-1]), f"stream finish reasons {finish}")
check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20, f"stream usage chunk {chunks[-1]}")
out["chat_stream_url"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

# transcription (OpenAI's form), greedy without repetition penalty, as `earshot run --raw` with the ASR prompt
with open(f"{data}/speech-espeak.mp3", "rb") as f:
    t = client.audio.transcriptions.create(model=model, file=f, response_format="json", temperature=0,
                                          extra_body={"repetition_penalty": 1, "max_tokens": 20,
                                                      "ignore_eos": True})
out["transcription"] = t.text
with open(f"{data}/speech-espeak.mp3", "rb") as f:
    tv = client.audio.transcriptions.create(model=model, file=f, response_format="verbose_json", temperature=0,
                                           extra_body={"repetition_penalty": 1, "max_tokens": 20,
                                                       "ignore_eos": True})
check(tv.text == t.text and abs(tv.duration - 5.8) < 0.2, f"verbose_json {tv}")

# errors the client maps to its exception classes
try:
    client.chat.completions.create(model=model, messages=msgs, n=2)
    check(False, "n=2 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "n must be 1" in str(e), f"n=2: {e}")
try:
    client.chat.completions.create(model="no-such-model", messages=msgs)
    check(False, "unknown model accepted")
except openai.NotFoundError as e:
    check(e.status_code == 404, f"unknown model: {e}")
try:
    OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    check(False, "wrong key accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401, f"wrong key: {e}")

if failures:
    print("\n".join("openai client: " + f for f in failures))
    sys.exit(1)
print(json.dumps(out))
