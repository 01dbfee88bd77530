"""The embedded offline model (SmolLM2-135M-Instruct in-process by llama.cpp): its identity and
installation (``model``), the LiteLLM provider (``provider``), the llama.cpp engine and its grammar
sampling."""
