"""The training loop in pure PyTorch: one config in, one report per epoch. Never imports Ray (a test
imports it with ``ray`` blocked); tuning/ wraps it for Ray Tune."""
