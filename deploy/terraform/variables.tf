variable "name" {
  description = "Name of the service, its task family, roles, log group and security group."
  type        = string
  default     = "sluice"
}

variable "image" {
  description = "The image scripts/image.sh built, pushed to a registry the tasks can pull from (e.g. ECR)."
  type        = string
}

variable "ecs_cluster_arn" {
  description = "ARN of the ECS cluster the service runs in."
  type        = string
}

variable "msk_cluster_arn" {
  description = "ARN of the MSK cluster (arn:aws:kafka:REGION:ACCOUNT:cluster/NAME/UUID); the IAM policy names its topics, group and transactional ids."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the subnets and of the MSK cluster."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the tasks run in; they must reach the brokers and the image registry."
  type        = list(string)
}

variable "msk_security_group_id" {
  description = "Security group of the MSK brokers; the tasks' group is allowed to reach it on 9098."
  type        = string
}

variable "source_topic" {
  description = "The topic Sluice reads ([source] topic)."
  type        = string
}

variable "sink_topics" {
  description = "Every topic Sluice writes: [sink] topic, dead_letter_topic and the [sink.outputs] topics."
  type        = list(string)
}

variable "group_id" {
  description = "The consumer group ([source] group_id); the changelog topic and transactional ids derive from it."
  type        = string
}

variable "exactly_once" {
  description = "Whether the pipeline runs exactly-once (grants the transactional ids sluice-GROUP-*)."
  type        = bool
  default     = true
}

variable "config_path" {
  description = "The pipeline file inside the image, naming the cluster's IAM brokers (port 9098) and the topics and group below (a scratch image has no shell to write one at start: build it in, see docs/deploy.md)."
  type        = string
  default     = "/etc/sluice/sluice.toml"
}

variable "host_count" {
  description = "Hosts in the group, one ECS service of one task each (each keeps its exactly-once instance id, sluice-0, sluice-1, ...): at most the source topic's partition count."
  type        = number
  default     = 2
}

variable "cpu" {
  description = "Task CPU units. One worker copies about 100 000 records/s with the pass-through on about 0.3 vCPU (BENCHMARKS.md)."
  type        = number
  default     = 512
}

variable "memory" {
  description = "Task memory in MiB. A host peaks near 84 MB copying; compiling a JavaScript or Python plugin at start needs several hundred MB more."
  type        = number
  default     = 1024
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the hosts' logs."
  type        = number
  default     = 365
}

variable "log_kms_key_arn" {
  description = "KMS key that encrypts the log group (null: CloudWatch's own encryption)."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
