output "task_role_arn" {
  description = "The role Sluice's MSK IAM tokens are signed with."
  value       = aws_iam_role.task.arn
}

output "service_names" {
  description = "One ECS service per host, sluice-0 to sluice-(host_count - 1)."
  value       = aws_ecs_service.sluice[*].name
}

output "log_group_name" {
  description = "Where the hosts' logs go."
  value       = aws_cloudwatch_log_group.sluice.name
}

output "security_group_id" {
  description = "The hosts' security group."
  value       = aws_security_group.sluice.id
}
