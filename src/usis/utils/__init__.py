"""Small utilities every layer may use: atomic files, the device, image conversion."""
