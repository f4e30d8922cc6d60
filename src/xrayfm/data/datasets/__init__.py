"""One module per public dataset family; each registers its adapter on import."""
