"""Command-line tools: deeplab2 checkpoint and config import."""
