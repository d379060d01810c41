"""The official `openai` Python client's Realtime API (client.realtime.connect, the `websockets` package) against
`earshot serve`'s /v1/realtime (run by test_voice with build/test-venv's Python).

usage: openai_realtime.py BASE_URL API_KEY MODEL PCM16_16K_FILE
One session: turn detection off, 16 kHz PCM input, greedy sampling; the file's samples are appended in pieces,
committed and answered (max 20 tokens, ignore_eos); then a second response in the same conversation is cancelled
right away. Every event is validated against the SDK's pydantic models of server events. Prints one JSON object ({"text": the first reply, "events": the event types in order, ...}) and exits
0, or prints what went wrong and exits 1.
"""
import base64
import json
import sys

from openai import OpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

base_url, api_key, model, pcm_path = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
failures = []
out = {"events": []}


def check(cond, what):
    if not cond:
        failures.append(what)


SERVER_EVENT = TypeAdapter(RealtimeServerEvent)


def until(conn, done_type):
    """Events up to and including the first of done_type (an error event is recorded and ends the wait). Each
    event's JSON is validated against the SDK's own server-event models (its parser does not check them)."""
    got = []
    while True:
        raw = conn.recv_bytes()
        try:
            data = json.loads(raw)
            # earshot's one extension to the schema: audio/pcm at any rate (OpenAI's model allows only 24000)
            fmt = data.get("session", {}).get("audio", {}).get("input", {}).get("format") or {}
            if data.get("type", "").startswith("session.") and fmt.get("type") == "audio/pcm":
                fmt["rate"] = 24000
            SERVER_EVENT.validate_python(data)
        except Exception as e:  # noqa: BLE001 - any validation failure is a finding
            failures.append("event does not match the SDK's model: %s: %s" % (raw[:200], str(e)[:300]))
        ev = conn.parse_event(raw)
        out["events"].append(ev.type)
        got.append(ev)
        if ev.type == done_type or ev.type == "error":
            break
    return got


with open(pcm_path, "rb") as f:
    pcm = f.read()

with client.realtime.connect(model=model) as conn:
    first = until(conn, "session.created")
    check(first and first[-1].type == "session.created", "no session.created")
    conn.session.update(
        session={
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
            "temperature": 0,
            "repetition_penalty": 1,
            "ignore_eos": True,
        }
    )
    upd = until(conn, "session.updated")
    check(upd and upd[-1].type == "session.updated", "no session.updated: %r" % (upd[-1] if upd else None))
    for i in range(0, len(pcm), 6400):
        conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 6400]).decode())
    conn.input_audio_buffer.commit()
    committed = until(conn, "input_audio_buffer.committed")
    check(committed and committed[-1].type == "input_audio_buffer.committed", "not committed")
    conn.response.create(response={"max_output_tokens": 20})
    text = ""
    done = None
    for ev in until(conn, "response.done"):
        if ev.type == "response.output_text.delta":
            text += ev.delta
        if ev.type == "response.done":
            done = ev
    out["text"] = text
    check(done is not None, "no response.done")
    if done is not None:
        out["status"] = done.response.status
        out["output_tokens"] = done.response.usage.output_tokens if done.response.usage else None
        item_text = done.response.output[0].content[0].text if done.response.output else None
        check(item_text == text, "response.done's item text %r != the deltas %r" % (item_text, text))
    # a second response, cancelled at once: it ends "cancelled" (or "incomplete" if it beat the cancel)
    conn.response.create(response={"max_output_tokens": 2000})
    conn.response.cancel()
    second = until(conn, "response.done")
    out["second_status"] = second[-1].response.status if second and second[-1].type == "response.done" else None

if failures:
    print("\n".join(failures))
    print(json.dumps(out))
    sys.exit(1)
print(json.dumps(out))
