"""keras_flow."""
