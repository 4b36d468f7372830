"""RadFM fine-tuning recipe: LoRA on the language model plus the perceiver/embedding, on VQA/report JSONL."""
