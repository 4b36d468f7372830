"""LoRA SFT recipe that teaches a medical LLM medagent's tool-call format from agent traces."""
