"""Who may do what: principals and grants, the role policy, token verification, the audit record."""
