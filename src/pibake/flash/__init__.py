"""Writing a finished image to an SD card: which devices may be written, the device, the writer, bmap files."""
