"""zaphub's built-in plugins; each registers through the ``zaphub.plugins`` entry-point group."""
