"""The control layer: every command's lifecycle, from request to the device's final answer."""
