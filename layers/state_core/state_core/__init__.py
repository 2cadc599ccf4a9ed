"""The state service's domain core: plain Python shared by every function through the layer."""
