"""Training: features, models, online trainer, versioned model store. The core never imports Ray."""
