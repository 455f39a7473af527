"""Services, targets, routing rules, the decision engine and the proxy."""
