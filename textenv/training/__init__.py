"""Stages 1-3 of the pipeline: tokenizer, causal-LM pretraining and fine-tuning, reward models."""
