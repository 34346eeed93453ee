//! The example plugins of `examples/`, through the real proxy.
