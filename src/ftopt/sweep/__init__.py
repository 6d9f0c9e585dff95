"""The proof of concept: `bench` (a sweep of measured runs), `demo` (the whole loop offline) and the sample task."""
