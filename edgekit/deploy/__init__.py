"""The deploy side: load an artifact, tokenize, run, profile, evaluate. Never imports torch,
transformers, nncf or the build side."""
