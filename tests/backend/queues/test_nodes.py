"""``SHOPCARDD_AMQP_URL`` naming the nodes of a RabbitMQ cluster: the setting takes the list and
refuses, in one line without the password, a list no connection could use; the nodes that do not
answer are named without it. (A relay and a worker whose first node is down: ``test_relay.py``,
``test_worker.py``.)"""

from __future__ import annotations

import pytest

from servers import free_port
from shopcardd_backend.queue.base import QueueUnavailable
from shopcardd_backend.queue.rabbitmq import connect, node_parameters
from shopcardd_backend.settings import Settings, SettingsError

PASSWORD = "s3cret-Passw0rd"
NODES = [f"amqp://shop:{PASSWORD}@rabbit-{n}:5672/shop" for n in (1, 2, 3)]


def amqp_url_of(environ: pytest.MonkeyPatch, value: str) -> str:
    environ.setenv("SHOPCARDD_AMQP_URL", value)
    url = Settings.from_env().amqp_url
    assert url is not None
    return url


def test_a_cluster_is_named_node_by_node_and_one_url_is_one_node(environ: pytest.MonkeyPatch) -> None:
    cluster = node_parameters(amqp_url_of(environ, ", ".join(NODES)))
    assert [(node.host, node.port, node.virtual_host) for node in cluster] == [
        ("rabbit-1", 5672, "shop"),
        ("rabbit-2", 5672, "shop"),
        ("rabbit-3", 5672, "shop"),
    ]
    assert [getattr(node.credentials, "password", None) for node in cluster] == [PASSWORD] * 3
    assert [node.host for node in node_parameters(amqp_url_of(environ, NODES[1]))] == ["rabbit-2"]
    default_vhost = amqp_url_of(environ, "amqp://guest:guest@h1:5672/%2F,amqp://guest:guest@h2")
    assert [node.virtual_host for node in node_parameters(default_vhost)] == ["/", "/"]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"{NODES[0]},,{NODES[1]}", "item 2 of 3 is empty"),
        (f"{NODES[0]},", "item 2 of 2 is empty"),
        (f"{NODES[0]},amqp://shop:{PASSWORD}@rabbit-2:5672/other", "different vhosts"),
        (f"{NODES[0]},amqp://shop:{PASSWORD}@rabbit-2:5672", "different vhosts"),
        (f"{NODES[0]},redis://:{PASSWORD}@rabbit-2", "item 2 of 2 must start with amqp://"),
        (f"amqp://shop:pass,{PASSWORD}@rabbit-1/shop", "a comma in a password is %2C"),
    ],
    ids=["empty item", "trailing comma", "another vhost", "default vhost", "another scheme", "comma"],
)
def test_a_list_no_connection_could_use_is_refused_in_one_line_without_the_password(
    environ: pytest.MonkeyPatch, value: str, why: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        amqp_url_of(environ, value)
    message = str(refused.value)
    assert message.startswith("SHOPCARDD_AMQP_URL: ") and why in message
    assert PASSWORD not in message and "\n" not in message


def test_nodes_that_do_not_answer_are_each_named_without_the_password() -> None:
    ports = [free_port(), free_port()]
    with pytest.raises(QueueUnavailable) as refused:
        connect(",".join(f"amqp://shop:{PASSWORD}@127.0.0.1:{port}/shop" for port in ports))
    message = str(refused.value)
    assert all(f"127.0.0.1:{port}" in message for port in ports), message
    assert PASSWORD not in message
