// Owns the response shapes shared by every route. Response schemas are allowlists: a field not named here
// never leaves the service.
import { z } from 'zod';

export const ErrorSchema = z.object({
  statusCode: z.number().int(),
  error: z.string(),
  message: z.string(),
});

export const errorResponses = {
  400: ErrorSchema,
  401: ErrorSchema,
  409: ErrorSchema,
  429: ErrorSchema,
  500: ErrorSchema,
  503: ErrorSchema,
};
