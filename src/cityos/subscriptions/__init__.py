"""Subscriptions and notifications (spec 5.8): model, matching, delivery, the outbox dispatcher."""
