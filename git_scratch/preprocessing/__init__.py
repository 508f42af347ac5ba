"""What goes into the model: images to pixels, text to ids (and back), video frames, the original's text cuts."""
