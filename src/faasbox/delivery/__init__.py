"""Delivery: result destinations for async work, topics with subscriptions, workflows;
subscribes to the platform's events, never called by the invoker directly."""
