"""ComfyUI entry point of the SHARP node pack (see nodes/). Imports cleanly outside ComfyUI."""
