"""The shop's models in the version the process runs (APP_VERSION): 1 before the
migration 0002_reshape, 2 after it. Two versions of one app, as an old and a new
deployment of the same code base run side by side during a rollout."""

import os

from django.db import models


class Customer(models.Model):
    email = models.TextField()
    if os.environ.get("APP_VERSION", "2") == "1":
        name = models.TextField()
        amount = models.IntegerField()
        legacy = models.TextField(null=True)
    else:
        full_name = models.TextField()
        amount = models.BigIntegerField()
        status = models.TextField(default="active")

        class Meta:
            indexes = [models.Index(fields=["email"], name="shop_customer_email_idx")]
