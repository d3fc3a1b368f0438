# Sluice on ECS Fargate: `host_count` hosts in one consumer group, each an ECS service
# of exactly one task. One service per host, not one service of N tasks: exactly-once
# needs an instance id per host that a replacement keeps (its transactional id fences
# and aborts what its predecessor left open), and ECS tasks have no ordinal. Each
# service stops its old task before it starts the new one, so two tasks never share
# an id.

data "aws_region" "current" {}

locals {
  # ARNs of the cluster's resources: arn:aws:kafka:REGION:ACCOUNT:KIND/NAME/UUID/...
  topic_arn = replace(var.msk_cluster_arn, ":cluster/", ":topic/")
  group_arn = replace(var.msk_cluster_arn, ":cluster/", ":group/")
  txn_arn   = replace(var.msk_cluster_arn, ":cluster/", ":transactional-id/")
}

resource "aws_cloudwatch_log_group" "sluice" {
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

resource "aws_security_group" "sluice" {
  name        = var.name
  description = "Sluice hosts: no inbound; out to the brokers (IAM, 9098) and HTTPS (registry, STS, CloudWatch)"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_vpc_security_group_egress_rule" "brokers" {
  security_group_id            = aws_security_group.sluice.id
  description                  = "Kafka with MSK IAM"
  referenced_security_group_id = var.msk_security_group_id
  ip_protocol                  = "tcp"
  from_port                    = 9098
  to_port                      = 9098
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.sluice.id
  description       = "Image registry, STS and CloudWatch Logs (through VPC endpoints or NAT)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "brokers_from_sluice" {
  security_group_id            = var.msk_security_group_id
  description                  = "Sluice hosts to Kafka with MSK IAM"
  referenced_security_group_id = aws_security_group.sluice.id
  ip_protocol                  = "tcp"
  from_port                    = 9098
  to_port                      = 9098
}

resource "aws_ecs_task_definition" "sluice" {
  count                    = var.host_count
  family                   = "${var.name}-${count.index}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  tags                     = var.tags

  container_definitions = jsonencode([
    {
      name      = "sluice"
      image     = var.image
      essential = true
      command   = ["run", "--config", var.config_path]
      user      = "65532:65532"
      # The image's HOME keeps the compilation cache and the admin token: it must
      # belong to the user, which Fargate's task volumes do not.
      readonlyRootFilesystem = false
      environment = [
        { name = "SLUICE_INSTANCE", value = "${var.name}-${count.index}" },
        { name = "AWS_REGION", value = data.aws_region.current.name },
      ]
      # The host's stop takes at most 25 s; ECS sends SIGKILL after stopTimeout.
      stopTimeout = 40
      healthCheck = {
        # No shell in the image: the binary asks its own admin endpoint.
        command     = ["CMD", "/usr/local/bin/sluice", "plugin", "status"]
        interval    = 30
        timeout     = 10
        retries     = 3
        startPeriod = 60
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.sluice.name
          awslogs-region        = data.aws_region.current.name
          awslogs-stream-prefix = "sluice"
        }
      }
    }
  ])
}

resource "aws_ecs_service" "sluice" {
  count            = var.host_count
  name             = "${var.name}-${count.index}"
  cluster          = var.ecs_cluster_arn
  task_definition  = aws_ecs_task_definition.sluice[count.index].arn
  desired_count    = 1
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"
  tags             = var.tags

  # Stop the old task, then start the new one: never two tasks with one instance id.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.sluice.id]
    assign_public_ip = false
  }
}
