"""Pictures and videos in and out: decode, encode, metadata, resize, video frames."""
