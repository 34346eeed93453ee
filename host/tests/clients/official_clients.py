"""The official `ollama` and `openai` Python clients, pointed at llamagate.

Run by host/tests/it/clients.rs with the proxy's URL as the only argument. The
proxy fronts two simulated backends: llama3.2 and all-minilm on one, qwen2.5:14b
on the other, with the alias gpt-4o -> llama3.2 listed.
"""

import sys

import ollama
import openai

url = sys.argv[1]
client = ollama.Client(host=url)

names = [m.model for m in client.list().models]
assert names == ["llama3.2:latest", "all-minilm:latest", "qwen2.5:14b", "gpt-4o:latest"], names

reply = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
assert reply.message.content.startswith("Hello from"), reply
assert reply.done and reply.eval_count > 0, reply

parts = list(client.chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True))
assert len(parts) > 2 and parts[-1].done, parts
text = "".join(p.message.content for p in parts)
assert text.startswith("Hello from llama3.2"), text

gen = client.generate(model="qwen2.5:14b", prompt="hi", options={"temperature": 0.1})
assert gen.response.startswith("Hello from qwen2.5:14b"), gen

emb = client.embed(model="all-minilm", input=["a", "b"])
assert len(emb.embeddings) == 2, emb

show = client.show("qwen2.5:14b")
assert show.details.family, show

assert client.ps() is not None

try:
    client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model must fail")
except ollama.ResponseError as e:
    assert e.status_code == 404, e
    assert 'model "nope" not found' in e.error, e.error

try:
    list(client.chat(model="llama3.2", messages=[{"role": "user", "content": "[[abort]]"}], stream=True))
    raise AssertionError("a broken stream must raise")
except ollama.ResponseError as e:
    assert "broke" in e.error, e.error

oai = openai.OpenAI(base_url=url + "/v1", api_key="unused")
ids = [m.id for m in oai.models.list()]
assert "gpt-4o:latest" in ids and "qwen2.5:14b" in ids, ids

completion = oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
assert completion.choices[0].message.content.startswith("Hello from"), completion

chunks = list(
    oai.chat.completions.create(
        model="qwen2.5:14b",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed.startswith("Hello from qwen2.5:14b"), streamed
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, chunks[-1]

vectors = oai.embeddings.create(model="all-minilm", input=["a", "b"])
assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0, vectors

try:
    oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("unknown model must fail")
except openai.NotFoundError as e:
    assert "nope" in str(e), e

print("official clients: all checks passed")
