"""Static assets of the server (the /dashboard page). A package so that the wheel and the Docker image carry
them as package data."""
