"""MedVInT-TD fine-tuning recipe: LoRA on LLaMA plus the vision side, on PMC-VQA-format (CSV) or VQA JSONL data."""
