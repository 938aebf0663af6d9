"""P2Med-MLLM components: pure torch / transformers / peft, nothing of Ray or the platform."""
