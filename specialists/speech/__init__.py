"""Speech recognition: Whisper on two runtimes (faster-whisper, openai-whisper) and the audio reader."""
