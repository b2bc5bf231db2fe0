# As `manage.py makemigrations` writes it for version 1 of the models.
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Customer",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("email", models.TextField()),
                ("name", models.TextField()),
                ("amount", models.IntegerField()),
                ("legacy", models.TextField(null=True)),
            ],
        ),
    ]
