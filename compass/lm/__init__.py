"""Language models: loading the base causal LM, training LoRA adapters, evaluating them."""
