# Copyright 2026 The uni-moe developers. Licensed under the Apache License, Version 2.0.
"""Training helpers for Uni-MoE: the deterministic synthetic multimodal task suite (`synthetic`)."""
