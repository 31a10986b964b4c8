"""Multi-step commands that drive stock nnU-Net (self-training; the command runner the demo shares). Each step is a
function that keeps its state on disk; the command-line interfaces are thin shells around them."""
