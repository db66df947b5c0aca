"""Scripts run by the vLLM venv's interpreter (torch, transformers): never imported here."""
