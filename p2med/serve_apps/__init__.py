"""Ray Serve applications: typed app builders, serve_config.yaml and the Gradio demo."""
