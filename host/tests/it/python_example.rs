//! The Python example plugin (componentize-py), through the real proxy.
