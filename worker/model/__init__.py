"""The client of the model's API: an OpenAI-compatible chat completions server (the
Hugging Face router, TGI, vLLM, llama.cpp). :mod:`worker.model.llm` asks it,
:mod:`worker.model.response` and :mod:`worker.model.sse` read its stream,
:mod:`worker.model.errors` names its failures, :mod:`worker.model.tokens` counts tokens
and :mod:`worker.model.overflow` reads a refusal of a prompt too long for its context."""
