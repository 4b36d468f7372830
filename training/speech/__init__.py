"""Speech recipe: fine-tune Whisper (HF) and export to openai-whisper .pt and CTranslate2."""
