# As `manage.py makemigrations` writes it for version 2 of the models: a field renamed,
# a field widened, a field removed, a NOT NULL field with a default added, an index added.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]

    operations = [
        migrations.RenameField(model_name="customer", old_name="name", new_name="full_name"),
        migrations.AlterField(model_name="customer", name="amount", field=models.BigIntegerField()),
        migrations.RemoveField(model_name="customer", name="legacy"),
        migrations.AddField(model_name="customer", name="status",
                            field=models.TextField(default="active")),
        migrations.AddIndex(
            model_name="customer",
            index=models.Index(fields=["email"], name="shop_customer_email_idx"),
        ),
    ]
