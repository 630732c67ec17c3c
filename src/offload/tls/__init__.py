"""TLS: policies, certificate loading, SNI selection and the TLS stream."""
