"""Networks of the paper's appendix Tables 3-4 and their convolution kernels."""
