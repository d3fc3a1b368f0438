# Two roles: the execution role lets ECS pull the image and write the logs; the task
# role is what Sluice signs its MSK IAM tokens with, and may do exactly what the host
# does on the cluster (README.md, "AWS MSK IAM"), on the pipeline's own topics, group
# and transactional ids.

data "aws_iam_policy_document" "assume_by_ecs_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.assume_by_ecs_tasks.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.assume_by_ecs_tasks.json
  tags               = var.tags
}

data "aws_iam_policy_document" "kafka" {
  statement {
    sid = "Cluster"
    # Connect; the producers are idempotent (and transactional with exactly-once).
    actions = [
      "kafka-cluster:Connect",
      "kafka-cluster:WriteDataIdempotently",
    ]
    resources = [var.msk_cluster_arn]
  }

  statement {
    sid       = "Source"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = ["${local.topic_arn}/${var.source_topic}"]
  }

  statement {
    sid       = "Sinks"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = [for topic in var.sink_topics : "${local.topic_arn}/${topic}"]
  }

  statement {
    sid = "StateChangelog"
    # The host creates the compacted changelog topic when it is missing.
    actions = [
      "kafka-cluster:CreateTopic",
      "kafka-cluster:DescribeTopic",
      "kafka-cluster:ReadData",
      "kafka-cluster:WriteData",
    ]
    resources = ["${local.topic_arn}/${var.group_id}-state-changelog"]
  }

  statement {
    sid       = "Group"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = ["${local.group_arn}/${var.group_id}"]
  }

  dynamic "statement" {
    for_each = var.exactly_once ? [1] : []
    content {
      sid = "TransactionalIds"
      # sluice-GROUP-INSTANCE, and -K for worker K > 0 of a host.
      actions = [
        "kafka-cluster:DescribeTransactionalId",
        "kafka-cluster:AlterTransactionalId",
      ]
      resources = ["${local.txn_arn}/sluice-${var.group_id}-*"]
    }
  }
}

resource "aws_iam_role_policy" "kafka" {
  name   = "${var.name}-kafka"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.kafka.json
}
