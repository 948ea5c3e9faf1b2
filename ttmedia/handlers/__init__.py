"""One module per spec tag; each public function is the handler of the operationId of that name."""
